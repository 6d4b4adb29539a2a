"""Self-checks for the chapters' exercises: ``from ppo_lib.exercises.ch04 import check_gae``.

Each check takes the reader's function, runs it on inputs where the right answer is known
(hand-computed values, the library's tested implementation, invariants), and either prints
a short success line or raises ``AssertionError`` with a hint that says what is wrong.
Checks never print the solution.
"""


def passed(name: str) -> None:
    """Print the one-line success message every check ends with."""
    print(f"✓ {name}: all checks passed.")
