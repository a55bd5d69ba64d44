"""DINO self-supervised pretraining: head.py, loss.py, schedules.py, trainer.py, export.py.

Nothing is imported here so that `import pathgen.ssl.<module>` stays cheap; see trainer.train and
export.load_encoder for the entry points.
"""
