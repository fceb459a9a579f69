"""layermatte for Krita 5: a layer mask from the local layermatte daemon.

Scripts (no GUI needed, e.g. under kritarunner):

    import layermatte_krita
    mask = layermatte_krita.generate_mask(doc, doc.activeNode(), feather=1.5)
    layermatte_krita.refine_mask(doc, mask, shift=-1)

Inside Krita the package also registers the Extension with the actions
layermatte_generate_mask, layermatte_refine_mask and layermatte_options.
"""
from .core import PluginError
from .masking import Job, LayermatteError, generate_mask, refine_mask

__all__ = ["generate_mask", "refine_mask", "Job", "LayermatteError", "PluginError"]


_extension = None  # the registered Extension (kept referenced from Python)


def _register() -> None:
    global _extension
    from krita import Krita

    from .extension import LayermatteExtension
    app = Krita.instance()
    _extension = LayermatteExtension(app)
    app.addExtension(_extension)


try:
    _register()
except ImportError:  # plain Python (no Krita): the functions above still import
    pass
