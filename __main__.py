"""`python -m h36m ...` and `torchrun ... -m h36m train ...`: the `h36m` command."""
from h36m.cli import main

if __name__ == "__main__":
    main()
