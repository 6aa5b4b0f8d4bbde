"""CaDistill: a student classifier trained on real data, taught by the teacher only through the CLARep bank."""
