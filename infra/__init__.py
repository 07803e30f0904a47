"""The Pulumi program (pulumi-azure-native) that declares the paired fine-tuning estate on Azure ML.

`__main__.py` is what `pulumi up` runs; `program.declare` declares everything from a validated
`config.StackConfig`, which is what the tests call under `pulumi.runtime.set_mocks`.
"""
