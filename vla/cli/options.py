"""Option texts shared by several commands, so that one flag means the same everywhere."""

DEVICE_HELP = "Torch device of the policy: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:1, mps."
