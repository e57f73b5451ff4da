"""``python -m pqprune`` — the same command line as ``pqprune``; needed by ``torchrun -m pqprune run ...``."""

from pqprune.cli.app import main

if __name__ == "__main__":
    main()
