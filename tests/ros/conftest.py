"""Fixtures for the ROS 2 integration tests: a ROS_DOMAIN_ID of each
test's own and a real rclpy peer on it. Everything else is the test kit,
`flowpilot_py.testkit` (python/)."""
import pytest

from flowpilot_py.testkit import Peer, domains


@pytest.fixture
def domain():
    return next(domains)


@pytest.fixture
def peer(domain):
    p = Peer(domain)
    yield p
    p.close()
