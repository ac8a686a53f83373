"""Quantization modes, TFLite conversion in each, and the audit that proves a file is its mode.

``modes`` holds the table (read by the space validator: nothing here imports TensorFlow or the
TFLite schema at import time); ``convert`` turns a Keras model into an audited flatbuffer;
``audit`` reads one; ``debugger`` reports which layers lose the most under int8.
"""

# The submodules ``audit`` and ``convert`` share their names with the functions re-exported
# here; importing every submodule first, and binding the functions last, keeps
# ``search.quantize.audit`` / ``.convert`` the functions whatever is imported later.
from search.quantize.modes import QUANT_MODES, ConverterRequest, QuantMode, get_mode
from search.quantize.audit import Audit, audit
from search.quantize.convert import ConvertedModel, convert
from search.quantize.debugger import REPORT_MODES, layer_error_report, write_layer_report

__all__ = [
    "QUANT_MODES",
    "QuantMode",
    "ConverterRequest",
    "get_mode",
    "ConvertedModel",
    "convert",
    "Audit",
    "audit",
    "REPORT_MODES",
    "layer_error_report",
    "write_layer_report",
]
