"""The isaacfs command: thin argparse/rich front ends over jobs, control and the daemon."""
