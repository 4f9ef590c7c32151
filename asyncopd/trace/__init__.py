"""The run-directory format shared by the simulator and the trainer."""
