"""Photoshop documents: layer masks written into real files, a byte-level section reader, the composite decision."""
