"""Grading a class: every answer re-checked in a fenced process, the score from outside it.

* :mod:`~gptcourse.grading.structure`: which exercises a chapter grades, which cells of a
  submission answer them;
* :mod:`~gptcourse.grading.isolation`: resource limits, hidden paths, another uid;
* :mod:`~gptcourse.grading.sandbox`: the fork server that runs answer cells per exercise;
* :mod:`~gptcourse.grading.command`: ``gptcourse grade``, the class run.
"""
