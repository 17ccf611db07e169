"""ROS 2 layer of sonata_ros: messages <-> arrays, the perception node, the demo. Thin by design."""
