"""One folder per op; ``op.py`` here is the path every call takes. The public functions are imported by
``longattn/__init__.py`` (one line per op folder). In each folder:

- ``op.py``: the public function, its prepared ``Inputs`` (built by one ``prepare()`` that validates
  and normalises), its ``torch.library`` schema with real and fake implementations;
- ``support.py``: what each backend implements and why it declines a call (imports no kernels);
- ``reference.py``: the pure-PyTorch ground truth; ``triton_*.py``: Triton kernels; ``ascend.py``:
  the Ascend C kernel's limits and arguments (ascend_c/<op>);
- ``README.md``: the math, the special values, the kernels' design.
"""
