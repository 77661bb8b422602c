"""The Pusher component (see component.py):

from dp_tfx.components.pusher import Pusher
"""

from dp_tfx.components.pusher.component import Pusher

__all__ = ["Pusher"]
