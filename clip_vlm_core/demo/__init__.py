"""`make demo`: the whole system on a synthetic nuScenes scene, end to end.

1. synthesise a small nuScenes scene whose content is known   (clip-vlm data synth)
2. convert it to a rosbag2 bag in bags/                        (clip-vlm bag convert --captions)
3. start caption_node with the embedded default model          (ros2 run clip_vlm caption_node)
4. replay the bag into it                                      (clip-vlm bag play)
5. print each caption as it arrives beside the ground truth, with its latency
6. ask a few questions about the scene on /scene_question; print each answer beside the truth
7. write an HTML report (frames, truth, caption, latency and drop figures, questions and answers)
8. stop everything it started

Like `bag play`, this is an application on top of the core: rclpy is imported only inside `run`.

Nothing may be lost on a busy machine. The player starts once every topic it plays has a subscriber,
or once no new subscriber has come for half a second after the first: measured beside eight CPU-bound
processes, the node's subscriptions were discovered seconds after this script's own, so a listener of
the camera topics here let the replay start early and the node lost its first keyframes (1 to 4 of 12).
So the demo plays only the topics it needs, each with a subscriber it knows of: the camera topics, which
only the node subscribes to, and the ground truth (/scene_caption_gt, published with each keyframe), which
only this script subscribes to and times frames by; the player then waits for all three. It also waits for
the node's question subscription before asking, and every publisher that ends (the player's, the
questions', the node's) waits for its messages to be acknowledged first.

The steps are in clip_vlm_core/demo/run.py, the scene and its bag in scene.py, the scoring and the report
in report.py.
"""
