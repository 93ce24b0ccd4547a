"""The avatar4d benchmark suite (``python -m eval.run``): metrics and the published CelebA / HDTF protocols.

Metrics live in ``eval/metrics/`` and protocols in ``eval/protocols/``; see ``../shared/design/eval-protocols.md``
for the protocols this package follows.
"""
