from .op import apply_attention_sink, merge_attention_states

__all__ = ["merge_attention_states", "apply_attention_sink"]
