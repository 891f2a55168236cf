"""ctxstyle: contextual style transfer for CT gray-scale adaptation.

A reproduction of Xu, Li & Shin, "Medical image processing with contextual style transfer",
Human-centric Computing and Information Sciences 10:46 (2020).
"""

__version__ = "0.1.0"
