"""avatar4d: one-shot 4D head avatars (Portrait4D family), faithful and fast.

Subpackages (imports flow downward only):

* :mod:`avatar.pipelines` - photo/video in, frames out
* :mod:`avatar.models`, :mod:`avatar.face`, :mod:`avatar.motion` - networks
* :mod:`avatar.render`, :mod:`avatar.flame`, :mod:`avatar.nn` - cameras, volume rendering, FLAME, layers
* :mod:`avatar.hub` - upstream checkpoints: registry, safe reading, conversion, download, cache
"""

__version__ = "0.1.0.dev0"
