"""Entry points (Hydra) and their configs. Only this package reads configs."""
