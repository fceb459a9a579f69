#!/usr/bin/env python3
"""layermatte for GIMP 3: local AI background removal as a layer mask.

Procedures (Layer > Mask):
  plug-in-layermatte-remove-background         one click, default settings, every selected layer
  plug-in-layermatte-remove-background-dialog  the same with a dialog (model, edges, output)
  plug-in-layermatte-refine-mask               refine each selected layer's existing mask, no model

The matte comes from the local layermatte daemon through layermatte_lite
(gRPC where the editor's Python has it, else the `layermatte pipe` program).
All GIMP calls live in gimp_adapter; this file holds the procedures' logic.
"""
import os
import sys
import threading
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
from gi.repository import GLib, GObject, Gimp  # noqa: E402

import gimp_adapter as ga  # noqa: E402
import layermatte_lite as lite  # noqa: E402

PROC_REMOVE = "plug-in-layermatte-remove-background"
PROC_DIALOG = "plug-in-layermatte-remove-background-dialog"
PROC_REFINE = "plug-in-layermatte-refine-mask"
MODELS = [("default", "Daemon default (ISNet)"), ("isnet-general", "ISNet general"),
          ("isnet-general-int8", "ISNet general (int8, faster)"), ("birefnet-general", "BiRefNet general"),
          ("birefnet-general-lite", "BiRefNet general lite"), ("modnet-portrait", "MODNet portrait"),
          ("rmbg-1.4", "BRIA RMBG 1.4"), ("rmbg-2.0", "BRIA RMBG 2.0"), ("u2net", "U²-Net"),
          ("u2netp", "U²-Net small")]
OUTPUTS = [("mask", "Layer mask"), ("layer", "New layer with the cutout"), ("selection", "Selection")]
QUALITIES = [("fast", "Fast (edge-aware upsampling)"), ("hq", "High quality (matting on hair and fur edges, slower)")]
TITLE = {PROC_REMOVE: "Remove Background (layermatte)", PROC_DIALOG: "Remove Background (layermatte)",
         PROC_REFINE: "Refine Mask (layermatte)"}


# Layers GIMP draws from a source that can change later (link and vector layers: GIMP 3.2)
SOURCES = {"text": "text", "link": "linked file", "vector": "path"}


class UserError(Exception):
    """A reason shown to the user in GIMP's error message; the image is left as it was."""


# -- logic on plain values ---------------------------------------------------------------
def _settings(proc_name, config):
    s = {"feather": config.get_property("feather"), "shift": config.get_property("shift"),
         "quality": config.get_property("quality")}
    if proc_name == PROC_REFINE:
        return dict(s, output="refine", replace=True, model="", decontaminate=False)
    model = config.get_property("model")
    return dict(s, model="" if model == "default" else model, output=config.get_property("output"),
                replace=config.get_property("replace-mask"),
                decontaminate=config.get_property("decontaminate"))


def _can_autostart():
    """Start a missing daemon only when the layermatte program can be found; otherwise the
    error says how to start it instead of that the program is missing."""
    try:
        lite.layermatte_command()
        return True
    except lite.LayermatteError:
        return False


def _matte(info, settings, report):
    """Run one layer through the daemon in a worker thread, so that GIMP's progress bar is
    driven from this (the plug-in's main) thread whatever thread the transport reports from."""
    state, box, cancel = {"stage": "", "fraction": 0.0}, {}, threading.Event()
    options = {"model": settings["model"], "feather": settings["feather"], "shift": settings["shift"],
               "quality": settings["quality"], "decontaminate": settings["decontaminate"],
               # A cut-out layer needs the (decontaminated) colours; masks need only the matte.
               "foreground": settings["output"] == "layer"}
    guide = info["mask"] if settings["output"] == "refine" else None

    def progress(stage, fraction):
        state["stage"], state["fraction"] = stage, fraction

    def work():
        try:
            box["result"] = lite.matte(info["width"], info["height"], info["format"], info["pixels"],
                                       options=options, guide_mask=guide, depth16=info["depth16"],
                                       progress=progress, cancel=cancel, autostart=_can_autostart())
        except BaseException as e:  # handed to the main thread
            box["error"] = e

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    shown = None
    while worker.is_alive():
        worker.join(0.1)
        now = (state["stage"], state["fraction"])
        if now != shown:
            report(*now)
            shown = now
    if "error" in box:
        raise box["error"]
    matte, summary = box["result"]
    return matte, summary.get("foreground")


def notes(facts, output):
    """What the user should know about layers drawn from a text, a linked file or a path:
    the result was made from their pixels as drawn now."""
    out = []
    for f in facts:
        if f["kind"] in SOURCES:
            if output == "layer":
                what = "the cut-out is a plain pixel layer made from its pixels as drawn now"
            else:
                what = (f"layermatte worked on its pixels as drawn now; the result does not follow "
                        f"later changes to its {SOURCES[f['kind']]}")
            out.append(f"'{f['name']}' is a {f['kind']} layer: {what}.")
    return out


def process(proc_name, image, drawables, settings):
    """Check and read every layer, compute every matte, and only then change the image,
    as one undo group: a failure at any point before leaves the image untouched.
    Returns notes for the user (see notes())."""
    layers = ga.selected_layers(drawables)
    refine = settings["output"] == "refine"
    facts = [ga.layer_facts(layer) for layer in layers]
    for facts_one in facts:
        if refine and not facts_one["has_mask"]:
            raise UserError(f"layer '{facts_one['name']}' has no layer mask to refine. Add one first "
                            "(Layer > Mask > Add Layer Mask, e.g. from a rough selection).")
        if settings["output"] == "mask" and facts_one["has_mask"] and not settings["replace"]:
            raise UserError(f"layer '{facts_one['name']}' already has a layer mask. Apply or delete it, "
                            "or use Remove Background (layermatte)... with 'Replace existing mask'.")
    infos = [ga.read_layer(layer, with_mask=refine) for layer in layers]
    ga.progress_start(TITLE[proc_name] + "...")
    try:
        mattes = []
        for i, info in enumerate(infos):
            def report(stage, fraction, i=i, name=info["name"]):
                ga.progress((i + fraction) / len(infos), f"{name}: {stage}" if stage else None)
            mattes.append(_matte(info, settings, report))
        ga.progress(1.0)
    finally:
        ga.progress_end()
    with ga.undo_group(image):
        for layer, info, (matte, colours) in zip(layers, infos, mattes):
            if refine:
                ga.replace_mask_contents(layer, matte, info["depth16"])
            elif settings["output"] == "layer":
                ga.write_new_layer(layer, matte, info["depth16"], colours, info["format"])
            elif settings["output"] == "selection":
                ga.write_selection(layer, matte, info["depth16"])  # the last layer's matte wins
            else:
                ga.write_mask(layer, matte, info["depth16"], replace=settings["replace"])
    return notes(facts, settings["output"])


# -- GIMP procedures -----------------------------------------------------------------------
def _fail(procedure, message, status=Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error.new_literal(
        GLib.quark_from_string("layermatte"), message, 0))


def run(procedure, run_mode, image, drawables, config, data):
    name = procedure.get_name()
    # Refine Mask asks for its few options (feather, shift, quality) from the menu too.
    if name in (PROC_DIALOG, PROC_REFINE) and run_mode == Gimp.RunMode.INTERACTIVE:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi
        GimpUi.init("layermatte")
        dialog = GimpUi.ProcedureDialog.new(procedure, config, TITLE[name])
        dialog.fill(None)
        ok = dialog.run()
        dialog.destroy()
        if not ok:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    try:
        said = process(name, image, drawables, _settings(name, config))
    except lite.Cancelled:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    except (UserError, lite.LayermatteError, ValueError) as e:
        return _fail(procedure, f"{TITLE[name]}: {e}")
    except Exception as e:  # a bug: still a clear message, details on stderr
        traceback.print_exc()
        return _fail(procedure, f"{TITLE[name]}: internal error ({type(e).__name__}: {e}). "
                                "Please report it with GIMP's error console output.")
    if said:
        ga.message("\n".join(said))  # GIMP puts the procedure's name in front
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _choice(items):
    choice = Gimp.Choice.new()
    for i, (nick, label) in enumerate(items):
        choice.add(nick, i, label, "")
    return choice


class Layermatte(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC_REMOVE, PROC_DIALOG, PROC_REFINE]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE
                                       | Gimp.ProcedureSensitivityMask.DRAWABLES)
        procedure.set_attribution("layermatte", "layermatte contributors", "2026")
        rw = GObject.ParamFlags.READWRITE
        procedure.set_menu_label(TITLE[name] + ("..." if name in (PROC_DIALOG, PROC_REFINE) else ""))
        procedure.add_menu_path("<Image>/Layer/Mask")  # after set_menu_label, or GIMP refuses it
        if name == PROC_REFINE:
            procedure.set_documentation(
                "Refine each selected layer's existing mask against its pixels",
                "Sends the layer and its mask (from any source: a quick selection, a painted mask) to the "
                "local layermatte daemon, which refines the edges at full resolution without running a "
                "model. The result replaces the mask's contents as one undo step.", name)
        else:
            procedure.set_documentation(
                "Remove the background of every selected layer as a layer mask",
                "Runs the local layermatte daemon's model on each selected layer's own pixels and adds "
                "the matte as a layer mask (or a new cut-out layer, or the selection). The layer's pixels "
                "are not changed. One undo step. Needs the layermatte daemon (`layermatte serve`).", name)
            procedure.add_choice_argument("model", "_Model", "Catalogue id of the model", _choice(MODELS),
                                          "default", rw)
        procedure.add_double_argument("feather", "_Feather", "Edge softening in layer pixels",
                                      0.0, 100.0, 0.0, rw)
        procedure.add_double_argument("shift", "_Shift edge", "Move the edge outwards (+) or inwards (-), "
                                      "in layer pixels", -100.0, 100.0, 0.0, rw)
        procedure.add_choice_argument("quality", "_Edge quality", "Fast, or high quality: alpha matting on "
                                      "the uncertain edge band (hair, fur), about 2-4x the refinement time",
                                      _choice(QUALITIES), "fast", rw)
        if name != PROC_REFINE:
            procedure.add_boolean_argument("decontaminate", "_Decontaminate colours",
                                           "Remove background colour fringes from cut-out colours",
                                           False, rw)
            procedure.add_choice_argument("output", "_Output", "Where the matte goes", _choice(OUTPUTS),
                                          "mask", rw)
            procedure.add_boolean_argument("replace-mask", "_Replace existing mask",
                                           "Replace a layer mask that is already there (otherwise: error)",
                                           False, rw)
        return procedure


Gimp.main(Layermatte.__gtype__, sys.argv)
