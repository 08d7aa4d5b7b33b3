"""data/photos"""
