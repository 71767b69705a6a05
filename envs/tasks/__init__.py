"""Multi-turn tasks shipped with rayrm, each with a verifiable reward (``env/success``).

* ``envs.tasks.arithmetic:Calculator`` -- multiplications a small model cannot do in its head,
  with a ``calculate`` tool (a tool task);
* ``envs.tasks.guess:GuessTheNumber`` -- a number-guessing game against a scripted host that
  answers "higher" or "lower" (a game).

Each module also writes its prompts file (``write_rows``): the rows the environment is built
from, one episode each.
"""
