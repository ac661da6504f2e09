"""Providers: the engines that start and stop a pool's hosts (the provider only asks).

The interface is :class:`Provider` (``base.py``); ``docker.py`` runs runner containers on a
Docker engine, ``aws_asg.py`` drives an EC2 Auto Scaling group. docs/capacity.md says how
another engine (a Kubernetes Deployment) maps onto it.
"""
