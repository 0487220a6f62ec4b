"""Every error minilora raises for a file it refuses to read, in one place.

Loading a model, an adapter or a training checkpoint can fail in a few distinct
ways, and each has its own type, so that a caller can tell them apart (and a
test can check that nothing else escapes). Each message names the file and the
key or field at fault.

    LoadError                          any of the below: catch this to catch them all
    ├── CheckpointError (ValueError)   the files are there and readable, but their content is wrong
    │   ├── ConfigError                a JSON config: not UTF-8, not JSON, nested too deeply, NaN or
    │   │                              Infinity, a field of the wrong type or value, a bad regex,
    │   │                              an unknown method (peft_type), a setting minilora cannot honour
    │   ├── WeightsError               a safetensors file: a damaged or truncated header, a dtype that
    │   │                              is not a float where a parameter is stored, non-finite values
    │   ├── MismatchError              two files that disagree: a key or shape the config (or the model)
    │   │                              does not imply, a key it implies that is missing
    │   └── InterruptedSaveError       the two files of a folder come from different saves (a save
    │                                  was killed between its two renames; see docs/files.md)
    └── FileAccessError (OSError)      the file cannot be read as a file
        ├── MissingFileError (FileNotFoundError)   a file or folder that is not there
        └── NotRegularFileError        a named pipe, a device, a folder where a file should be

``CheckpointError`` is the name ``minilora.models.hf`` has always raised; it is now the
parent of the four content errors, so ``except CheckpointError`` keeps catching them,
and so does ``except ValueError``. ``FileNotFoundError`` keeps catching a missing file.

Saving has one error of its own: ``SaveError`` (a ValueError), raised before anything is
written when there is nothing sensible to write (an adapter that was merged away). A command's
``--out`` folder that minilora will not write into (not empty, and not its own earlier output:
``minilora.io.replacing_output_folder``) is an ``OutputFolderError`` (an OSError).
"""

from __future__ import annotations


class LoadError(Exception):
    """A file (or folder) minilora refuses to load. Never raised itself: one of its subclasses is."""


class CheckpointError(LoadError, ValueError):
    """A checkpoint or adapter whose content is wrong (the message names the file, the key and the shapes)."""


class ConfigError(CheckpointError):
    """A JSON config that is not valid: its syntax, a field's type or value, a regex, an unknown method."""


class WeightsError(CheckpointError):
    """A safetensors file that is damaged, truncated, or stores a tensor minilora will not read."""


class MismatchError(CheckpointError):
    """Files that disagree with each other or with the model: a key or a shape."""


class InterruptedSaveError(CheckpointError):
    """The config and the weights of a folder carry different save ids: a save was interrupted."""


class FileAccessError(LoadError, OSError):
    """A path that cannot be read as a file."""


class MissingFileError(FileAccessError, FileNotFoundError):
    """A file or folder that is not there."""


class NotRegularFileError(FileAccessError):
    """A path that is a named pipe, a device, a socket or a folder, where a regular file should be."""


class SaveError(ValueError):
    """A save refused before anything was written (e.g. an adapter with no weights left to save)."""


class OutputFolderError(OSError):
    """An output folder refused before anything was written: a file, another program's folder, the
    installed package (``minilora.io``; the message names the folder and what would be accepted)."""


__all__ = ["LoadError", "CheckpointError", "ConfigError", "WeightsError", "MismatchError",
           "InterruptedSaveError", "FileAccessError", "MissingFileError", "NotRegularFileError", "SaveError", "OutputFolderError"]
