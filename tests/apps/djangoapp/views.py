import hashlib

from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt


def index(request):
    return HttpResponse("Hello from Django\n", content_type="text/plain")


def json_view(request):
    return JsonResponse({"ok": True, "script_name": request.META.get("SCRIPT_NAME"), "path": request.path, "path_info": request.path_info, "q": request.GET.dict()})


@csrf_exempt
def form(request):
    return JsonResponse({"name": request.POST.get("name"), "city": request.POST.get("city")})


@csrf_exempt
def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse({"filename": f.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "note": request.POST.get("note")})


def go(request):
    return HttpResponseRedirect(reverse("json"))


def boom(request):
    raise RuntimeError("SECRET-DJANGO-DETAIL")
