"""The front-end's SSH faces: who may log in as what, node sessions and the user commands."""
