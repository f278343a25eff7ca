"""The publish station: alarms, events and diagnoses out over MQTT with store-and-forward; operator commands and questions in.

Topic scheme: ``factory_copilot.publish.topics``; payload schemas: ``schemas/`` and
``factory_copilot.publish.payloads``; the station itself: ``Publisher``.
"""

from factory_copilot.publish.publisher import Publisher
from factory_copilot.publish.topics import TopicParts, Topics, parse

__all__ = ["Publisher", "TopicParts", "Topics", "parse"]
