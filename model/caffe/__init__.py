"""The reference Caffe weights without Caffe: a ``.caffemodel`` reader and the conversion."""
