"""Inner update rules ("meta-optimizers"), chosen by ``meta_optimizer=<name>``.

Each is a :class:`~meta_safe.meta_optimizers.base.MetaOptimizer` built by hydra from
``configs/meta_optimizer/<name>.yaml`` (its ``_target_``): adding one is a module
plus a yaml file.
"""

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer

__all__ = ["InnerContext", "MetaOptimizer"]
