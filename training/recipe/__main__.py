"""`python -m training.recipe`: one arm of a pair (see training.recipe.train)."""

import sys

from training.recipe.train import main

if __name__ == "__main__":
    sys.exit(main())
