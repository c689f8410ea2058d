"""stochastic_circle."""
