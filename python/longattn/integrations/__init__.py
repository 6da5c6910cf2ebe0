"""Integrations with other libraries. Each submodule imports its library; this package imports none.

- ``longattn.integrations.transformers``: run a transformers DeepSeek-V4 model on longattn
  (``swap_attention(model)``); needs ``pip install longattn[transformers]``.
"""
