"""The networks: FCN-32s/16s/8s on VGG16, the ImageNet weight surgery, input normalisation."""
