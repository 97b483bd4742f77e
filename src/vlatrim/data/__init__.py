"""Robot datasets: Meta-World task specs and instructions, LeRobotDataset v3.0 read/write, demos."""
