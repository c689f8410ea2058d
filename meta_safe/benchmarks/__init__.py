"""Speed benchmarks, run by ``meta-safe bench <name>``: ``meta-iteration`` (seconds per
meta-iteration by phase and backend), ``envs`` (env steps per second against stock
Safety-Gymnasium) and ``long-run`` (time and memory over a 300-iteration run)."""
