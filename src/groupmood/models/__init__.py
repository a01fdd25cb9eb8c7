"""Model registry and the networks of every branch."""
from .catalog import create_model, list_models, model_info, resolve_recipe
from .registry import register_model

__all__ = ["create_model", "list_models", "model_info", "register_model", "resolve_recipe"]
