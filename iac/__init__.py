"""CloudFormation templates of the control plane, generated from the code.

``python -m iac.generate`` writes them; see generate.py.
"""
