"""`python -m multigrain` (and `torchrun -m multigrain`) run the CLI."""

from multigrain.cli.main import main

main()
