"""Jobs that train or evaluate on their own to produce an artifact (e.g. the tiny_base model).

They sit above methods/: they may use the Lightning modules, the data and the evaluation harness, and
nothing below (models/, data/, ...) imports them. runner.py calls them before it loads what they build.
"""
