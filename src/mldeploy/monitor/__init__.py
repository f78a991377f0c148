"""Monitoring: baseline statistics, drift of live traffic, canary analysis and the clouds' own
monitoring (alarms, SageMaker Model Monitor, Vertex model monitoring, Azure Monitor)."""
