"""What every trainer shares: device and precision, distributed set-up, checkpoints, seeding, logs, progress.

Nothing is imported here so that `import pathgen.runtime.<module>` stays cheap.
"""
