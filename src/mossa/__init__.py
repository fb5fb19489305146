"""mossa: where in an LLM's layers does multi-task learning happen?

Rebuilds the study of "Layer by Layer" (Zhao, Ziser, Cohen, EMNLP 2024): base model B,
multi-task model E and per-task control models C_t are compared layer by layer with CKA on
the hidden state of the last prompt token. The data flow is one way:

    config -> tasks -> models -> training -> extraction -> store -> similarity -> analysis -> report
"""

__version__ = "0.1.0"
