"""The networks: FCN-32s/16s/8s on VGG16, FCN-AlexNet (Caffe's and torchvision's) and
FCN-GoogLeNet behind one base class (``base``), the ImageNet weight surgery, input
normalisation, and shift-and-stitch inference."""
