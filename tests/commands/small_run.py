"""The flags of the small `fastfree train` runs the command tests make (seconds on a CPU)."""

TRAIN = ["--iterations", "3", "--warmup", "1", "--eval-every", "2", "--val-tasks", "2", "--test-tasks", "3",
         "--teachers-per-iteration", "2", "--k", "1", "--device", "cpu"]
