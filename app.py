"""The avatar4d Gradio app's launcher, kept at the repository root for the Hugging Face Space (``app_file``).

The app itself is :mod:`avatar.app` (also ``avatar app`` and ``python -m avatar.app``). ``python app.py [--model
ID|DIR|tiny] [--port N] [--share] ...`` launches it; importing this file builds ``demo`` (a ``gr.Blocks``, from ``$AVATAR_MODEL``) without
launching it, for tools that look for a module-level ``demo`` (``gradio app.py`` reload mode). Everything else
(settings, endpoints, helpers) is in :mod:`avatar.app`.
"""

from __future__ import annotations

import sys

from avatar.app import build_demo, main

demo = build_demo()

if __name__ == "__main__":
    sys.exit(main(demo=demo))
