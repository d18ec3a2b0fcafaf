"""ONNX operators TensorRT can parse, written down from onnx-tensorrt's docs/operators.md.

Source: github.com/onnx/onnx-tensorrt, docs/operators.md at commit 96e78110 ("ONNX-TensorRT 10.1 GA release"):
"TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20". Only the default ONNX
domain is listed there; any node in another domain (custom ops, ``com.microsoft`` contrib ops) needs a
plugin and is rejected. Our export contract is stricter than TensorRT on a few operators (see
``PROJECT_FORBIDDEN``) because it asks for static shapes and no dynamic loops.
"""

from __future__ import annotations

TRT_MIN_OPSET = 9
TRT_MAX_OPSET = 20

# "Y" rows of the operator support matrix.
TRT_SUPPORTED_OPS = frozenset(
    {
        'Abs', 'Acos', 'Acosh', 'Add', 'And', 'ArgMax', 'ArgMin', 'Asin', 'Asinh', 'Atan', 'Atanh',
        'AveragePool', 'BatchNormalization', 'Cast', 'CastLike', 'Ceil', 'Celu', 'Clip', 'Concat', 'Constant',
        'ConstantOfShape', 'Conv', 'ConvTranspose', 'Cos', 'Cosh', 'CumSum', 'DeformConv', 'DepthToSpace',
        'DequantizeLinear', 'Div', 'Dropout', 'Einsum', 'Elu', 'Equal', 'Erf', 'Exp', 'Expand', 'EyeLike',
        'Flatten', 'Floor', 'Gather', 'GatherElements', 'GatherND', 'Gelu', 'Gemm', 'GlobalAveragePool',
        'GlobalLpPool', 'GlobalMaxPool', 'Greater', 'GreaterOrEqual', 'GridSample', 'GroupNormalization',
        'GRU', 'HardSigmoid', 'HardSwish', 'Hardmax', 'Identity', 'If', 'ImageScaler',
        'InstanceNormalization',
        'IsInf', 'IsNaN', 'LayerNormalization', 'LeakyRelu', 'Less', 'LessOrEqual', 'Log', 'LogSoftmax',
        'Loop', 'LRN', 'LSTM', 'LpNormalization', 'LpPool', 'MatMul', 'Max', 'MaxPool', 'Mean',
        'MeanVarianceNormalization', 'Min', 'Mish', 'Mod', 'Mul', 'Neg', 'NonMaxSuppression', 'NonZero',
        'Not',
        'OneHot', 'Or', 'Pad', 'ParametricSoftplus', 'Pow', 'PRelu', 'QuantizeLinear', 'RandomNormal',
        'RandomNormalLike', 'RandomUniform', 'RandomUniformLike', 'Range', 'Reciprocal', 'ReduceL1',
        'ReduceL2', 'ReduceLogSum', 'ReduceLogSumExp', 'ReduceMax', 'ReduceMean', 'ReduceMin', 'ReduceProd',
        'ReduceSum', 'ReduceSumSquare', 'Relu', 'Reshape', 'Resize', 'ReverseSequence', 'RNN', 'RoiAlign',
        'Round', 'ScaledTanh', 'Scan', 'Scatter', 'ScatterElements', 'ScatterND', 'Selu', 'Shape', 'Shrink',
        'Sigmoid', 'Sign', 'Sin', 'Sinh', 'Size', 'Slice', 'Softmax', 'Softplus', 'Softsign', 'SpaceToDepth',
        'Split', 'Sqrt', 'Squeeze', 'Sub', 'Sum', 'Tan', 'Tanh', 'ThresholdedRelu', 'Tile', 'TopK',
        'Transpose', 'Trilu', 'Unsqueeze', 'Upsample', 'Where', 'Xor',
    }
)  # fmt: skip

# "N" rows: listed so that an error can say "documented as unsupported" rather than "not listed".
TRT_UNSUPPORTED_OPS = frozenset(
    {
        'AffineGrid', 'Bernoulli', 'BitShift', 'BitwiseAnd', 'BitwiseNot', 'BitwiseOr', 'BitwiseXor',
        'BlackmanWindow', 'Col2Im', 'CenterCropPad', 'Compress', 'ConcatFromSequence', 'ConvInteger', 'DFT',
        'Det', 'DynamicQuantizeLinear', 'HammingWindow', 'HannWindow', 'ImageDecoder', 'MatMulInteger',
        'MaxRoiPool', 'MaxUnpool', 'MelWeightMatrix', 'Multinomial', 'NegativeLogLikelihoodLoss', 'Optional',
        'OptionalGetElement', 'OptionalHasElement', 'QLinearConv', 'QLinearMatMul', 'RegexFullMatch', 'STFT',
        'SequenceAt', 'SequenceConstruct', 'SequenceEmpty', 'SequenceErase', 'SequenceInsert',
        'SequenceLength', 'SequenceMap', 'SoftmaxCrossEntropyLoss', 'SplitToSequence', 'StringConcat',
        'StringNormalizer', 'StringSplit', 'TfIdfVectorizer', 'Unique',
    }
)  # fmt: skip

# Supported by TensorRT but outside our export contract (static shapes, no dynamic loops).
PROJECT_FORBIDDEN = {
    "NonZero": "output size depends on the data (our contract: static shapes; use a mask instead)",
    "Loop": "a dynamic loop (our contract: unroll fixed-count loops in forward)",
    "Scan": "a dynamic loop (our contract: unroll fixed-count loops in forward)",
}

# TensorRT I/O types (ONNX TensorProto.DataType names); UINT8 only as a network input or output.
TRT_IO_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL"})

# Documented restrictions we check on attributes (others are left to the TensorRT parser on the target).
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
TOPK_MAX_K = 3840
