"""Coaching mode for the learning path: `nanochat learn list | start | check | hint | solution | status`.

Each exercise is one module in `days/` (title, level, graded hints, the check), a starter in `starters/`
(its docstring is the goal; TODOs and a tiny scaffold) and a reference solution in `solutions/` (the same
behaviour as the project's own tested modules it names). The learner works in a workspace folder
(default `workspace/`); nothing is ever written into this package.

A check imports the learner's file in a subprocess with a timeout and answers like a reviewer: the wrong
behaviour, the input, expected vs got, and one hint. See docs/learn/README.md.
"""
