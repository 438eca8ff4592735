"""Teachers you can trust (issue 23): a card in every checkpoint, a zoo by ``NAME@DATASET``,
verified downloads, and a pre-flight accuracy check before a student run.

Modules, one job each: :mod:`.card` (what a teacher is), :mod:`.zoo` (names to files, the
manifest ``manifest.yaml`` beside this file, the cache), :mod:`.local` (the user's own
teachers, registered by card), :mod:`.download` (resumable, hash-checked HTTP),
:mod:`.archive` (one member out of a release tarball), :mod:`.preflight` (measured vs expected
accuracy, normalisation check). Nothing here imports the trainer, so the trainer can import it.
"""
