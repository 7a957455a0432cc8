"""`python -m minimagen.exercises --make-student-notebooks`: regenerate the student notebooks (see notebooks.py)."""
import sys

from .notebooks import main

sys.exit(main())
