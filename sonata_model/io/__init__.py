"""Point-cloud I/O without ROS: PointCloud2 codec, bag and dataset readers/writers, label sets."""
