"""Wave rollouts: a pure planner (``planner``) and the controller that applies it."""
