"""Peak GPU memory predicted on a CPU: fake execution of the harness's own training steps
(``predictor``), CUDA's kernel choices (``cuda_rules``), the plain loop the recorded GPU peaks came
from (``reference_program``), the research document's VRAM tables (``tables``) and ``harness probe``
(``probe``). Sits after ``training`` in the module chain: it imports the real training step."""
